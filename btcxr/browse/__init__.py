"""The case browser (`btcxr browse`): a static site of a cache split with each model's detections and heatmaps."""
