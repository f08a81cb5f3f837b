"""What a token grants: the intersection of the scopes asked for and what the account may do
(docker-auth-token.md, "Requesting a Token") — never more, and a shortfall is not an error."""

from __future__ import annotations

from auth.accounts import Accounts
from auth.scope import Resource, is_repository_name


async def grant_access(
    accounts: Accounts, subject: str | None, requested: list[Resource]
) -> list[Resource]:
    granted: list[Resource] = []
    for resource in requested:
        actions: list[str] = []
        if resource.type == "repository" and is_repository_name(resource.name):
            allowed = await accounts.allowed_actions(subject, resource.name)
            actions = [a for a in resource.actions if a in allowed]
        elif resource.type == "registry" and resource.name == "catalog":
            if "*" in resource.actions and await accounts.can_list_catalog(subject):
                actions = ["*"]
        # Unknown types and names outside the grammar (a hostname prefix, …) get nothing.
        granted.append(Resource(resource.type, resource.name, tuple(actions)))
    return granted
