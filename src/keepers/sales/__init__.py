"""Sales: deals with a MEDDIC scorecard in a pipeline with stage gates, and lead scoring.

- `meddic`: the elements, statuses, qualification score and weakest element (pure);
- `pipeline`: stages, gates and CRM stage names as validated data (pure);
- `records`: what a user may send about a deal or an element (pure);
- `lead_model`: fit and engagement rules, half-life, MQL/SQL thresholds (pure);
- `deals`, `leads`: the set-based SQL over the store; `config`: the stored documents.

The services layer (`keepers.services.sales`) is the one API web, CLI and Python call.
"""
