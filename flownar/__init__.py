"""flownar: streaming narration for long videos (FlowNar, ICML 2026) and the systems it is measured against."""
__version__ = "0.1.0"
