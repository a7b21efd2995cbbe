"""The harvest: verification, LPC scoring, mining of positives and hard negatives, rounds, ledger."""
