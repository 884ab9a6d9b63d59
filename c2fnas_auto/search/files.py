"""Names of the files and folders a search writes in its results folder."""

# the location under the preprocessed task that earlier 0.1.0 development versions searched in: moved to the
# results folder on --continue; removed in 0.3
SEARCH_DIR = "search"
STATE_FILE = "state.json"
REPORT_FILE = "report.json"
PROGRESS_PNG = "search_progress.png"
RANKING_PNG = "search_ranking.png"
GENOTYPE_PNG = "genotype.png"
GENOTYPE_FILE = "genotype.json"
SUPERNET_FILE = "supernet.pth"
# the per-candidate files of the engine before Optuna (earlier 0.1.0 development versions): refused on --continue,
# removed by --overwrite; this check goes in 0.3
TRIALS_DIR = "trials"
