"""``python -m nf ...``."""

from nf.main import main

main()
