"""The post-training stage (``runner``): any registered post-training method from any registered init source."""
