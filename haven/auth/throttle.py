"""Sign-in throttling in Redis, per username and per client address.

Every attempt is counted *before* the password is checked, so a burst of concurrent guesses
cannot all slip in before the first failure is recorded; a success gives its attempt back
(and clears the username's failures), so only failures and attempts in flight add up. Each
counter's window starts at its first attempt; past the limit the answer is 429 with
``Retry-After`` = the rest of the window.

Redis unreachable: sign-in goes on unthrottled (logged). Locking every user out because the
cache is down would be the worse failure; the password checks stay bounded in number by
``password_check_concurrency`` either way.
"""

from __future__ import annotations

import hashlib

import redis
import redis.asyncio as aredis
import structlog

from haven.errors import LimitExceeded

log = structlog.get_logger("haven.auth")

PREFIX = "haven:signin"
# Give one attempt back, but never to a counter whose window has already ended.
_GIVE_BACK = (
    "if redis.call('exists', KEYS[1]) == 1 then return redis.call('decr', KEYS[1]) end return 0"
)


def _username_key(username: str) -> str:
    # Hashed: a username is the caller's input, of any length.
    return f"{PREFIX}:user:{hashlib.sha256(username.encode()).hexdigest()[:32]}"


def _address_key(address: str) -> str:
    return f"{PREFIX}:addr:{address[:64]}"


class SignInThrottle:
    def __init__(
        self, client: aredis.Redis, *, per_username: int, per_address: int, window_seconds: int
    ) -> None:
        self.client = client
        self.per_username = per_username
        self.per_address = per_address
        self.window = window_seconds

    async def admit(self, username: str, address: str) -> None:
        """Count one attempt; raise ``LimitExceeded`` (with retry_after) past either limit."""
        user_key, address_key = _username_key(username), _address_key(address)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                # SET NX EX then INCR: the window starts at the first attempt and INCR keeps
                # the expiry.
                pipe.set(user_key, 0, ex=self.window, nx=True)
                pipe.incr(user_key)
                pipe.ttl(user_key)
                pipe.set(address_key, 0, ex=self.window, nx=True)
                pipe.incr(address_key)
                pipe.ttl(address_key)
                _, user_count, user_ttl, _, address_count, address_ttl = await pipe.execute()
        except redis.RedisError as exc:
            log.warning("auth.signin.throttle_unavailable", error=str(exc))
            return
        if user_count > self.per_username:
            await self._give_back(address_key)
            log.info("auth.signin.throttled", by="username")
            raise LimitExceeded(
                "too many failed sign-ins for this account; try again later",
                retry_after=max(int(user_ttl), 1),
                code="signin.throttled",
            )
        if address_count > self.per_address:
            await self._give_back(user_key)
            log.info("auth.signin.throttled", by="address", address=address)
            raise LimitExceeded(
                "too many sign-in attempts from this address; try again later",
                retry_after=max(int(address_ttl), 1),
                code="signin.throttled",
            )

    async def succeeded(self, username: str, address: str) -> None:
        """The password was right: its failures are forgiven, the attempt given back."""
        try:
            await self.client.delete(_username_key(username))
        except redis.RedisError as exc:
            log.warning("auth.signin.throttle_unavailable", error=str(exc))
            return
        await self._give_back(_address_key(address))

    async def _give_back(self, key: str) -> None:
        # A refused attempt was never tried, so it does not count against the other limit.
        try:
            await self.client.eval(_GIVE_BACK, 1, key)
        except redis.RedisError as exc:
            log.warning("auth.signin.throttle_unavailable", error=str(exc))
