"""cmt: Consistency Mid-Training (arXiv 2509.24526), an open end-to-end reproduction."""

__version__ = "0.1.0"
