"""Everything that changes instances: ordering, actions, and what hosts report back."""
