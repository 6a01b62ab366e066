"""`python -m reasondiff.harvest [+exp=NAME] [key=value ...]` — see conf/harvest.yaml and reasondiff/config/harvest.py; the recipe is reasondiff/harvest/run.py."""

from reasondiff.stage import hydra_app

main = hydra_app("harvest")

if __name__ == "__main__":
    main()
