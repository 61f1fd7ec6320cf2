"""Posting a photo to X: the image through the X API v2 media upload, then ``create_tweet``.

tweepy 4.17 wraps only the v1.1 upload X retired for self-serve apps in 2025, so :class:`XClient`
is a ``tweepy.Client`` whose ``request`` (the one every endpoint goes through, tweepy issue
#2217's shape) also takes multipart ``files``/``data``, goes to FARM_TWITTER_API_URL, always
passes FARM_SOCIAL_TIMEOUT (tweepy's own passes none: a stalled connection would hold a worker
thread until the task's time limit), never sleeps on a rate limit, and logs no request: headers
and bodies hold the user's token. It keeps tweepy's own session, OAuth 1.0a user auth
(``OAuth1UserHandler``) and error classes, so ``create_tweet`` is tweepy's own.

Uploads: images up to 5 MB in one ``POST /2/media/upload`` (multipart ``media``,
``media_category=tweet_image``, ``media_type``); larger ones in chunks: ``initialize`` (JSON),
``append`` per segment (multipart), ``finalize``. (X caps images at 5 MB, so a larger one is
refused at ``finalize``; the farm's full variant, 1080 px, is a few hundred KB.)

Errors, as the farm's (the caller, tasks/social/crosspost.py, acts on them):
- 429: :class:`RateLimited` until X's ``x-rate-limit-reset``, that account paused farm-wide;
- 403 whose detail says "duplicate content": :class:`Duplicate` (X refuses a text the account
  posted recently; ours always holds the photo's link, so the photo is on X already);
- 401 and other 403s: :class:`AccountRefused` (the caller unlinks the account, once
  tasks/social/refusals.py rules out the farm's own credentials: a wrong consumer secret makes
  X answer 401 for every user), except an app-level refusal X names as such
  (``client-not-enrolled``: the farm's app, not the user), a PermanentError;
- 5xx, timeouts, connection errors: TransientError (after the tweet was sent: maybe posted);
- other 4xx: PermanentError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
import tweepy
from tweepy.auth import OAuth1UserHandler
from tweepy.errors import (
    BadRequest,
    Forbidden,
    HTTPException,
    NotFound,
    TooManyRequests,
    TwitterServerError,
    Unauthorized,
)

from config.settings import Settings
from tasks.core.errors import PermanentError, RateLimited, TransientError
from tasks.social.accounts import Account
from tasks.social.logs import keep_credentials_out

keep_credentials_out()  # the HTTP libraries' DEBUG lines (tasks/social/logs.py)

ONE_SHOT_MAX = 5 * 1024 * 1024  # bytes: X's one-request upload limit for images
CHUNK = 4 * 1024 * 1024  # bytes per append segment (X accepts up to 5 MB)
DEFAULT_RESET_WAIT = 60.0  # seconds, for a 429 without x-rate-limit-reset
APP_LEVEL_REASONS = ("client-not-enrolled", "client-forbidden")

Pause = Callable[[str, float], None]  # (scope: "app" | "account", seconds)


class AccountRefused(PermanentError):
    """X refused the user's credentials (401, or 403 other than a duplicate): revoked, expired,
    suspended or without write access; or the app's own (tasks/social/refusals.py tells them
    apart before the account is unlinked)."""


class Duplicate(PermanentError):
    """X refused the text as a duplicate of one this account posted recently."""


class XClient(tweepy.Client):  # type: ignore[misc]  # tweepy ships no types
    """tweepy's v2 client, for one user's OAuth 1.0a credentials, with the farm's host and
    timeout and the v2 media upload. One per post: nothing is shared between threads."""

    def __init__(self, s: Settings, token: str, secret: str) -> None:
        super().__init__(consumer_key=s.twitter_consumer_key,
                         consumer_secret=s.twitter_consumer_secret, access_token=token,
                         access_token_secret=secret, wait_on_rate_limit=False)
        self.host = s.twitter_api_url.rstrip("/")
        self.timeout = s.social_timeout

    def __repr__(self) -> str:
        return f"XClient(host={self.host!r})"

    def request(self, method: str, route: str, params: dict[str, Any] | None = None,
                json: Any = None, user_auth: bool = False, *,
                files: dict[str, Any] | None = None,
                data: dict[str, Any] | None = None) -> requests.Response:
        headers = {"User-Agent": self.user_agent}
        auth = None
        if user_auth:
            auth = OAuth1UserHandler(self.consumer_key, self.consumer_secret, self.access_token,
                                     self.access_token_secret).apply_auth()
        else:  # app-only endpoints; the farm posts as users, but keep tweepy's contract
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        with self.session.request(method, self.host + route, params=params, json=json,
                                  data=data, files=files, headers=headers, auth=auth,
                                  timeout=self.timeout) as response:
            status = response.status_code
            if status == 400:
                raise BadRequest(response)
            if status == 401:
                raise Unauthorized(response)
            if status == 403:
                raise Forbidden(response)
            if status == 404:
                raise NotFound(response)
            if status == 429:
                reset = response.headers.get("x-rate-limit-reset")
                raise TooManyRequests(response, reset_time=int(reset) if reset and
                                      reset.isdigit() else None)
            if status >= 500:
                raise TwitterServerError(response)
            if not 200 <= status < 300:
                raise HTTPException(response)
            answer: requests.Response = response
            return answer

    def upload_image(self, image: bytes, media_type: str = "image/jpeg") -> str:
        """The media id of the uploaded image."""
        if len(image) <= ONE_SHOT_MAX:
            answer = self.request(
                "POST", "/2/media/upload", user_auth=True,
                files={"media": ("photo.jpg", image, media_type)},
                data={"media_category": "tweet_image", "media_type": media_type})
            return _media_id(answer)
        started = self.request("POST", "/2/media/upload/initialize", user_auth=True,
                               json={"media_type": media_type, "total_bytes": len(image),
                                     "media_category": "tweet_image"})
        media_id = _media_id(started)
        for index, start in enumerate(range(0, len(image), CHUNK)):
            self.request("POST", f"/2/media/upload/{media_id}/append", user_auth=True,
                         files={"media": ("chunk", image[start:start + CHUNK],
                                          "application/octet-stream")},
                         data={"segment_index": str(index)})
        done = self.request("POST", f"/2/media/upload/{media_id}/finalize", user_auth=True)
        state = (_data(done).get("processing_info") or {}).get("state")
        if state == "failed":
            raise PermanentError(f"X could not process the image (media {media_id})")
        return _media_id(done)


def post_photo(s: Settings, account: Account, image: bytes, text: str, pause: Pause) -> str:
    """Upload, then post; the tweet's id. Raises the farm's errors (module docstring)."""
    if not (s.twitter_consumer_key and s.twitter_consumer_secret):
        raise PermanentError("FARM_TWITTER_CONSUMER_KEY and FARM_TWITTER_CONSUMER_SECRET must "
                             "be set to post to X")
    client = XClient(s, account.token, account.secret)
    try:
        media_id = client.upload_image(image)
        answer = client.create_tweet(text=text, media_ids=[media_id], user_auth=True)
        tweet_id = (answer.data or {}).get("id")
        if not tweet_id:
            raise TransientError("X answered the post without a tweet id")
        return str(tweet_id)
    except TooManyRequests as exc:
        wait = exc.reset_time - time.time() if exc.reset_time else DEFAULT_RESET_WAIT
        wait = max(1.0, wait)
        pause("account", wait)
        raise RateLimited(f"X rate limit for {account.label}: {_said(exc)}",
                          retry_after=wait) from None
    except Forbidden as exc:
        said = _said(exc)
        if "duplicate content" in said.lower():
            raise Duplicate(f"X: {said}") from None
        if any(reason in _reasons(exc) for reason in APP_LEVEL_REASONS):
            raise PermanentError(f"X refused the farm's app: {said}") from None
        raise AccountRefused(f"X refused {account.label} (403): {said}") from None
    except Unauthorized as exc:
        raise AccountRefused(f"X refused {account.label}'s credentials (401): "
                             f"{_said(exc)}") from None
    except TwitterServerError as exc:
        raise TransientError(f"X server error: {_said(exc)}") from None
    except HTTPException as exc:  # 400, 404, other 4xx
        raise PermanentError(f"X refused the post: {_said(exc)}") from None
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientError(f"X unreachable: {type(exc).__name__}") from None
    except (requests.RequestException, ValueError) as exc:  # incl. a success that is not JSON
        raise TransientError(f"X answered oddly: {type(exc).__name__}") from None
    finally:
        client.session.close()


def _data(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise TransientError(f"X answered {response.status_code} without data")
    return data


def _media_id(response: requests.Response) -> str:
    media_id = _data(response).get("id")
    if not media_id:
        raise TransientError("X answered the upload without a media id")
    return str(media_id)


def _said(exc: HTTPException) -> str:
    """X's own words, on one line (never a request: only the answer's status and messages)."""
    return " ".join(str(exc).split())


def _reasons(exc: HTTPException) -> list[str]:
    try:
        body = exc.response.json()
    except ValueError:
        return []
    return [str(body.get("reason", ""))] if isinstance(body, dict) else []
