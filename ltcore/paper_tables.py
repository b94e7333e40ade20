"""Published numbers, printed beside ours in the notebooks. Data only, copied from the papers.

IEM: Zhu & Yang, "Inflated Episodic Memory with Region Self-Attention for Long-Tailed
Visual Recognition", CVPR 2020 (Tables 1-5). RAC: Long et al., "Retrieval Augmented
Classification for Long-Tail Visual Recognition", CVPR 2022 (Tables 3-5).
Dataset statistics are the ones the papers (and OLTR, Liu et al. 2019) state.
"""
from __future__ import annotations

# Published dataset statistics (IEM 4.1, RAC 4.1-4.2, OLTR 2019).
DATASET_STATS = [
    {"dataset": "ImageNet-LT", "classes": 1000, "train_images": 115_846, "max_per_class": 1280, "min_per_class": 5,
     "source": "IEM 4.1 / OLTR"},
    {"dataset": "Places-LT", "classes": 365, "train_images": 62_500, "max_per_class": 4980, "min_per_class": 5,
     "source": "RAC 4.1 / OLTR"},
    {"dataset": "iNaturalist 2018", "classes": 8142, "train_images": 437_513, "max_per_class": 1000,
     "min_per_class": 2, "source": "RAC 4.2 / Van Horn et al. 2018"},
    {"dataset": "YouTube-8M", "classes": 3696, "train_images": None, "max_per_class": 788_288,
     "min_per_class": 123, "source": "IEM 4.1"},
]

_SHOTS = ("many", "medium", "few", "overall")

# IEM Table 4(a): ImageNet-LT closed set (many/medium/few/overall) and open-set F-measure.
IEM_TABLE4A = [dict(zip(("method",) + _SHOTS + ("f_measure",), row)) for row in [
    ("Plain Model", 40.9, 10.7, 0.4, 20.9, 0.295),
    ("Lifted Loss", 35.8, 30.4, 17.9, 30.8, 0.374),
    ("Focal Loss", 36.4, 29.9, 16.0, 30.5, 0.371),
    ("Range Loss", 35.8, 30.3, 17.6, 30.7, 0.373),
    ("FSLwF", 40.9, 22.1, 15.0, 28.4, 0.347),
    ("OLTR", 43.2, 35.1, 18.5, 35.6, 0.474),
    ("IEM (Ours)", 48.9, 44.0, 24.4, 43.2, 0.525),
]]

# IEM Table 4(b): Places-LT closed set and open-set F-measure.
IEM_TABLE4B = [dict(zip(("method",) + _SHOTS + ("f_measure",), row)) for row in [
    ("Plain Model", 45.9, 22.4, 0.36, 27.2, 0.366),
    ("Lifted Loss", 41.1, 35.4, 24.0, 35.2, 0.459),
    ("Focal Loss", 41.1, 34.8, 22.4, 34.6, 0.453),
    ("Range Loss", 41.1, 35.4, 23.2, 35.1, 0.457),
    ("FSLwF", 43.9, 29.9, 29.5, 34.9, 0.375),
    ("OLTR", 44.7, 37.0, 25.3, 35.9, 0.464),
    ("IEM (Ours)", 46.8, 39.2, 28.0, 39.7, 0.486),
]]

# IEM Table 5: ablations, overall top-1 (closed set).
IEM_TABLE5 = [dict(zip(("method", "ImageNet-LT", "Places-LT", "SUN-LT", "iNaturalist"), row)) for row in [
    ("w/o RSA", 41.7, 31.1, 59.3, 69.5),
    ("w/o local memory", 38.1, 34.6, 57.9, 67.0),
    ("w/o global memory", 40.8, 36.9, 58.9, 68.1),
    ("IEM (Ours)", 43.2, 39.7, 60.2, 70.2),
]]

# RAC Table 3: common training scheme, base branch ViT-B-16 (Places365-LT and iNaturalist 2018).
RAC_TABLE3 = [dict(zip(("dataset", "method", "backbone") + _SHOTS, row)) for row in [
    ("Places365-LT", "CE", "ViT-B-16", 50.81, 33.83, 19.51, 37.16),
    ("Places365-LT", "BalCE", "ViT-B-16", 49.03, 45.72, 29.05, 43.67),
    ("Places365-LT", "Retrieval", "-", 43.50, 41.99, 26.83, 39.58),
    ("Places365-LT", "Base", "ViT-B-16", 44.57, 45.06, 40.77, 44.05),
    ("Places365-LT", "RAC", "ViT-B-16", 48.69, 48.31, 41.76, 47.17),
    ("iNaturalist 2018", "CE", "ViT-B-16", 81.53, 76.62, 69.82, 74.44),
    ("iNaturalist 2018", "BalCE", "ViT-B-16", 72.39, 76.06, 73.05, 74.49),
    ("iNaturalist 2018", "Retrieval", "-", 50.10, 52.77, 52.45, 52.37),
    ("iNaturalist 2018", "Base", "ViT-B-16", 74.41, 78.95, 78.55, 78.32),
    ("iNaturalist 2018", "RAC", "ViT-B-16", 75.92, 80.48, 81.07, 80.24),
]]

# RAC Table 4: standard 1-NN retrieval accuracy and construction time (encoding + HNSW), * = 384x384 input.
RAC_TABLE4 = [dict(zip(("dataset", "encoder") + _SHOTS[:3] + ("all", "construction_time"), row)) for row in [
    ("Places365-LT", "RN50", 31.73, 16.28, 8.65, 20.34, "0:46"),
    ("Places365-LT", "RN152d", 33.52, 17.71, 10.03, 21.89, "2:07"),
    ("Places365-LT", "ViT-B-32", 38.34, 24.82, 15.83, 27.92, "0:20"),
    ("Places365-LT", "ViT-B-32*", 39.95, 26.12, 16.87, 29.28, "0:49"),
    ("Places365-LT", "ViT-B-16", 39.97, 26.74, 18.65, 29.91, "0:53"),
    ("Places365-LT", "ViT-B-16*", 40.79, 27.23, 19.25, 30.55, "3:15"),
    ("iNaturalist 2018", "RN50", 26.8, 20.8, 21.15, 21.56, "5:14"),
    ("iNaturalist 2018", "RN152d", 38.95, 29.56, 28.45, 30.09, "17:50"),
    ("iNaturalist 2018", "ViT-B-32", 48.14, 43.69, 44.1, 44.31, "2:35"),
    ("iNaturalist 2018", "ViT-B-16", 59.38, 53.92, 52.42, 53.89, "4:19"),
    ("iNaturalist 2018", "ViT-B-16*", 66.15, 61.54, 60.92, 61.77, "22:14"),
]]

# RAC Table 5: training wall time on Places365-LT (k = 50), seconds per epoch.
RAC_TABLE5 = [dict(zip(("index", "index_size", "text_encoder", "seconds_per_epoch"), row)) for row in [
    ("None", "-", "None", 23.6),
    ("Places", "184K", "Rand.", 28.3),
    ("Places", "184K", "CLIP", 44.3),
    ("Places, IM21k", "11.2M", "CLIP", 47.0),
]]
