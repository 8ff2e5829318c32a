"""``python -m motion_relevance.explain`` runs the explain entry point (see :mod:`motion_relevance.explain_app`)."""

from motion_relevance.explain_app import main

if __name__ == "__main__":
    main()
