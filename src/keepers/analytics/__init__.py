"""Customer analytics: funnel, churn and retention, cohorts, the active-customer lifecycle
view, RFM, health and lifetime value — each a set-based query over the store, reproducible
as of a past moment, with the customers behind every number.

Each report builds one per-customer *membership* table (who is in which cell) and counts
it; `who` filters the same table, so a number and the list behind it cannot disagree.
"""
