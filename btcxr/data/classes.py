"""Label vocabularies of the two datasets, in their official spelling and order."""

from __future__ import annotations

# VinDr-CXR (Kaggle train.csv): class_id -> class_name. 14 is "No finding", not a detection class.
VINDR_CLASSES: list[str] = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
]
NO_FINDING_ID = 14
NO_FINDING = "No finding"
VINDR_CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(VINDR_CLASSES)} | {NO_FINDING: NO_FINDING_ID}

# VinDr-CXR 1.0.0 (PhysioNet) image_labels_*.csv: the 22 local labels then the 6 global ones, in file order.
VINDR_LOCAL_LABELS: list[str] = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
]
VINDR_GLOBAL_LABELS: list[str] = ["COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]

# NIH ChestX-ray14: the 14 findings plus "No Finding" (15 outputs of the classification probe).
NIH_FINDINGS: list[str] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
]
NIH_NO_FINDING = "No Finding"
NIH_LABELS: list[str] = NIH_FINDINGS + [NIH_NO_FINDING]
