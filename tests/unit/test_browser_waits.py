"""tests/support/browser.py ``wait_until``: a page that changes under a wait is "not yet",
not an error."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.common.exceptions import TimeoutException, WebDriverException

from tests.support.browser import wait_until

REPLACED = "unknown error: Node with given id does not belong to the document"


def test_errors_while_the_page_is_replaced_are_retried() -> None:
    answers: list[Any] = [WebDriverException(REPLACED), None, "Hello, ada"]

    def condition(_driver: Any) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_until(None, condition, 5, "no greeting") == "Hello, ada"
    assert answers == []


def test_a_timeout_names_the_wait_and_the_last_error() -> None:
    def condition(_driver: Any) -> Any:
        raise WebDriverException(REPLACED)

    with pytest.raises(TimeoutException, match=r"no greeting after 0\.3s .*does not belong"):
        wait_until(None, condition, 0.3, "no greeting")
