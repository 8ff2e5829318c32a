// The same kernels as _selective_cpu.cpp, compiled with AVX2 by setup.py (a separate file so that the two
// builds never share an object file). _selective_kernel.py loads this copy when the CPU supports AVX2.
#include "_selective_cpu.cpp"
