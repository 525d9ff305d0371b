"""Heatmaps of the detector's boxes (Ablation-CAM, Grad-CAM, EigenCAM), pictures and localisation scores.

base.py (shared CAM interface, layer names), targets.py (box score target), forward.py + fpn.py (the detector
cut at the target layer), ablation.py (batched Ablation-CAM), methods.py (--method), figures.py,
localisation.py, run.py (`btcxr explain`: explain_images, explain_split).
"""
