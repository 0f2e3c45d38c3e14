"""HTTP routes of accounts: ``/token`` (OAuth2 password flow), ``/logout``, ``/register``.

Errors of these routes follow OAuth2 (RFC 6749 section 5.2): a JSON body
``{"error": ..., "error_description": ...}``. Wrong credentials and unusable
refresh tokens are 401 ``invalid_grant``; too many login attempts are 429
``too_many_requests`` with ``Retry-After`` (seconds) and ``retry_after`` in the body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from ..auth.accounts import (
    Accounts,
    LoginRefused,
    RateLimited,
    TokenPair,
    Unauthenticated,
    retry_after_header,
)
from ..auth.passwords import InvalidUserName, WeakPassword
from ..store import UserExists
from .rooms import bearer_scheme, build_rooms_router

# Token responses must not be cached anywhere (RFC 6749 section 5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class TokenRequestForm(OAuth2PasswordRequestForm):
    """FastAPI's password form, widened to the refresh grant (``grant_type=refresh_token``).

    FastAPI's own form only accepts ``grant_type=password``; this one takes the
    same fields plus ``refresh_token``, and the route answers an unknown grant
    with an OAuth2 error rather than a validation error.
    """

    def __init__(
        self,
        *,
        grant_type: Annotated[str | None, Form()] = None,
        username: Annotated[str, Form()] = "",
        password: Annotated[str, Form(json_schema_extra={"format": "password"})] = "",
        refresh_token: Annotated[str, Form()] = "",
        scope: Annotated[str, Form()] = "",
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    ) -> None:
        super().__init__(
            grant_type=grant_type,
            username=username,
            password=password,
            scope=scope,
            client_id=client_id,
            client_secret=client_secret,
        )
        self.refresh_token = refresh_token


class Registration(BaseModel):
    name: str = Field(max_length=64)
    password: str = Field(max_length=4096)


def oauth_error(status: int, error: str, description: str, **extra: Any) -> JSONResponse:
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body: dict[str, Any] = {"error": error, "error_description": description, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def rate_limited(e: RateLimited) -> JSONResponse:
    seconds = retry_after_header(e.retry_after)
    response = oauth_error(
        429,
        "too_many_requests",
        f"too many login attempts: retry in {seconds} s",
        retry_after=int(seconds),
    )
    response.headers["Retry-After"] = seconds
    return response


def client_address(request: Request) -> str:
    """The peer's address (uvicorn resolves X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client is not None else "unknown"


def _token_response(pair: TokenPair) -> JSONResponse:
    body = {
        "access_token": pair.access_token,
        "token_type": "bearer",
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token,
    }
    return JSONResponse(body, headers=NO_STORE)


def iso(value: datetime) -> str:
    return value.isoformat()


def build_router(accounts: Accounts) -> APIRouter:
    """``/token``, ``/logout`` and ``/register``, and the rooms under ``/rooms``."""
    router = APIRouter()

    @router.post("/token", tags=["accounts"])
    async def token(request: Request, form: Annotated[TokenRequestForm, Depends()]) -> Response:
        """OAuth2 token endpoint: the password grant, and the refresh grant with rotation."""
        grant = form.grant_type or "password"
        try:
            if grant == "password":
                if not form.username or not form.password:
                    return oauth_error(400, "invalid_request", "username and password required")
                pair = await accounts.login(form.username, form.password, client_address(request))
            elif grant == "refresh_token":
                if not form.refresh_token:
                    return oauth_error(400, "invalid_request", "refresh_token required")
                pair = await accounts.refresh(form.refresh_token)
            else:
                return oauth_error(400, "unsupported_grant_type", f"grant {grant!r} not supported")
        except RateLimited as e:
            return rate_limited(e)
        except LoginRefused as e:
            return oauth_error(401, "invalid_grant", str(e))
        return _token_response(pair)

    @router.post("/logout", status_code=204, tags=["accounts"])
    async def logout(
        refresh_token: Annotated[str, Form()] = "",
        access_token: Annotated[str | None, Depends(bearer_scheme)] = None,
    ) -> Response:
        """End a session: with ``refresh_token`` (form), revoke its family; with a
        bearer access token, revoke every refresh token of that user. Either way,
        every connection of the user is closed with 3503 "logged out"."""
        try:
            if refresh_token:
                await accounts.logout_refresh_token(refresh_token)
            else:
                await accounts.logout_user(await accounts.authenticate(access_token))
        except LoginRefused as e:
            return oauth_error(401, "invalid_grant", str(e))
        except Unauthenticated as e:
            return oauth_error(401, "invalid_token", str(e))
        return Response(status_code=204, headers=NO_STORE)

    @router.post("/register", status_code=201, tags=["accounts"])
    async def register(request: Request, body: Registration) -> Response:
        """Create an account (only with ``allow_registration``); then log in at /token."""
        if not accounts.settings.allow_registration:
            return oauth_error(403, "access_denied", "registration is disabled")
        try:
            user = await accounts.register(body.name, body.password, client_address(request))
        except RateLimited as e:
            return rate_limited(e)
        except (InvalidUserName, WeakPassword) as e:
            return oauth_error(400, "invalid_request", str(e))
        except UserExists:
            return oauth_error(409, "user_exists", "that name is taken")
        return JSONResponse(
            {"name": user.name, "created_at": iso(user.created_at)}, status_code=201
        )

    router.include_router(build_rooms_router(accounts))
    return router
