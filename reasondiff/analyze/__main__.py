"""`python -m reasondiff.analyze [+exp=NAME] [key=value ...]` — see conf/analyze.yaml and reasondiff/config/analyze.py; the recipe is reasondiff/analyze/run.py."""

from reasondiff.stage import hydra_app

main = hydra_app("analyze")

if __name__ == "__main__":
    main()
