"""`python -m reasondiff.scan [+exp=NAME] [key=value ...]` — see conf/scan.yaml and reasondiff/config/scan.py; the recipe is reasondiff/scan/run.py."""

from reasondiff.app.stage import hydra_app
from reasondiff.tiny import prepare_tiny_world

main = hydra_app("scan", prepare=prepare_tiny_world)

if __name__ == "__main__":
    main()
