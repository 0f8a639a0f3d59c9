"""The hosts event relay: clients events survive server restarts."""
