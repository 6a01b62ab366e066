"""`python -m reasondiff.scan [+exp=NAME] [key=value ...]` — see conf/scan.yaml and reasondiff/config/scan.py; the recipe is reasondiff/scan/run.py."""

from reasondiff.stage import hydra_app

main = hydra_app("scan")

if __name__ == "__main__":
    main()
