"""Everything IdentityMiddleware consults: JWT issuers and key sets, claim maps, API keys, email rules."""
