"""Small chat tasks whose effect on a model is visible in its answers (the README's real-model walkthrough)."""
