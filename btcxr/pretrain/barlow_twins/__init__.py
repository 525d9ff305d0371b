"""Barlow Twins (Zbontar et al. 2021) as the paper ran it: model, loss, correlation heatmaps and the loop."""
