"""What the billing API does beyond the instance services: tokens, customers, idempotent
orders, single sign-on links."""
