"""The billing API's endpoints (api-contract.md): parse, check permission, call one service."""
