"""IMDB-WIKI-DIR dataset: `<data_dir>/imdb_wiki.csv` (age,path,split) and the images it lists (docs/published_behaviour.md §6).

Items are (image [3, s, s], age float32 [1], loss weight float32 [1]); see ranksim.harness.data.age.
"""
from ranksim.harness.data.age import AgeCSVDataset


class IMDBWIKI(AgeCSVDataset):
    csv_name = "imdb_wiki.csv"
    dataset_name = "imdb_wiki"
    how_to_create = ("download the images with `python data/download_imdb_wiki.py`, then create it with "
                     "`python data/create_imdb_wiki.py` or download the published split with "
                     "`python data/download_split.py`")
    overall_gm_eps = 1e-10  # the published IMDB-WIKI evaluation adds 1e-10 to the overall GM's errors
