"""AgeDB-DIR dataset: `<data_dir>/agedb.csv` (age,path,split) and the images it lists (docs/published_behaviour.md §6).

Items are (image [3, s, s], age float32 [1], loss weight float32 [1]); see ranksim.harness.data.age.
"""
from ranksim.harness.data.age import AgeCSVDataset


class AgeDB(AgeCSVDataset):
    csv_name = "agedb.csv"
    dataset_name = "agedb"
    how_to_create = ("create it with `python data/create_agedb.py` (from the raw AgeDB images) or download the "
                     "published split with `python data/download_split.py`")
    overall_gm_eps = 0.0
