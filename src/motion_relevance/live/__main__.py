"""``python -m motion_relevance.live`` runs the live entry point (see :mod:`motion_relevance.live.app`)."""

from motion_relevance.live.app import main

if __name__ == "__main__":
    main()
