"""What the CLI, the API and the dashboard call: one function per thing a user does."""

from keepers.analytics.scores import register_all

register_all()  # churn_risk and persona in stage and segment rules
