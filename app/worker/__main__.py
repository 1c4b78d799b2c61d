"""`python -m app.worker`: run worker supervisors against BACKPROP_DATABASE_URL (same as `backprop worker`)."""

from app.cli import main

if __name__ == "__main__":
    main(["worker"])
