"""The services sign page and resume tokens with the deployment's key:
PAGE_TOKEN_SECRET when set, else a key made once in DATA_DIR."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from chat_service.bootstrap import build_services
from chat_service.config import ConfigError, Settings
from chat_service.domain.errors import InvalidArgument
from chat_service.key_files import PAGE_TOKEN_KEY_FILENAME
from chat_service.ports import ConversationQuery
from chat_service.wiring import Services
from tests.builders import TENANT, create_change, make_conversation

Built = Callable[..., AbstractAsyncContextManager[Services]]


@pytest.fixture
def built(tmp_path: Path) -> Built:
    @asynccontextmanager
    async def build(data_dir: str = "shared", **env: str) -> AsyncIterator[Services]:
        settings = Settings.from_env({"DATA_DIR": str(tmp_path / data_dir), **env})
        services = await build_services(settings)
        try:
            yield services
        finally:
            await services.close(timeout=1)

    return build


async def _page_token(services: Services) -> str:
    for _ in range(2):
        await services.store.write(create_change(make_conversation()))
    page = await services.queries.list_conversations(
        TENANT, ConversationQuery(), page_size=1, page_token=""
    )
    assert page.next_page_token
    return page.next_page_token


async def _accepts(services: Services, token: str) -> bool:
    """Whether the page token is taken; a refusal must name page_token."""
    refused: list[str] = []
    try:
        await services.queries.list_conversations(
            TENANT, ConversationQuery(), page_size=1, page_token=token
        )
    except InvalidArgument as error:
        refused = [violation.field for violation in error.violations]
    assert refused in ([], ["page_token"])
    return not refused


async def test_replicas_with_one_secret_accept_each_others_tokens(built: Built) -> None:
    async with built("a", PAGE_TOKEN_SECRET="s" * 32) as first:
        page = await _page_token(first)
        resume = first.watch.tokens.resume_token(TENANT, 0)
    # Another process, another data directory: only the secret is shared.
    async with built("b", PAGE_TOKEN_SECRET="s" * 32) as second:
        assert second.watch.tokens.resume_position(TENANT, resume) == 0
        await _page_token(second)  # its store has conversations too
        assert await _accepts(second, page)
    async with built("c", PAGE_TOKEN_SECRET="o" * 32) as other:
        await _page_token(other)
        assert not await _accepts(other, page)
        with pytest.raises(InvalidArgument):
            other.watch.tokens.resume_position(TENANT, resume)


async def test_without_a_secret_the_key_is_made_once_in_data_dir(
    built: Built, tmp_path: Path
) -> None:
    async with built() as first:
        page = await _page_token(first)
    key_file = tmp_path / "shared" / PAGE_TOKEN_KEY_FILENAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    async with built() as restarted:
        assert await _accepts(restarted, page)
    async with built(PAGE_TOKEN_SECRET="s" * 32) as configured:
        assert not await _accepts(configured, page)


async def test_a_corrupt_key_file_stops_the_start(built: Built, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / PAGE_TOKEN_KEY_FILENAME).write_text("not hex")

    with pytest.raises(ConfigError, match="PAGE_TOKEN_SECRET"):
        async with built():
            pass
