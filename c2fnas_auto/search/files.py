"""Names of the files and folders a search writes in its results folder."""

SEARCH_DIR = "search"  # the old location under the preprocessed task (read on --continue)
STATE_FILE = "state.json"
REPORT_FILE = "report.json"
PROGRESS_PNG = "search_progress.png"
RANKING_PNG = "search_ranking.png"
GENOTYPE_PNG = "genotype.png"
GENOTYPE_FILE = "genotype.json"
SUPERNET_FILE = "supernet.pth"
TRIALS_DIR = "trials"  # the per-candidate files of the engine before Optuna (removed by --overwrite)
