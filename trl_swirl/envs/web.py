"""``web``: browsing a tiny shop website.

State format (five ``|``-separated fields, always in this order)::

    page PAGE | links LINK LINK ... | field VALUE | cart N | prev PAGE

* ``page``: the current page, one of ``home shop search cart lamp mug book pen done noresult``.
* ``links``: the links visible on that page (a fixed function of the page).
* ``field``: the text typed in the search box (``empty`` when nothing is typed).
* ``cart``: the number of items in the cart, ``0`` to ``5``.
* ``prev``: the page visited before this one (``none`` at the start); it is the
  one-step history that makes ``back`` Markov in the state text alone.

Site map (page -> links)::

    home -> shop search cart         shop -> home lamp mug book pen
    lamp / mug / book / pen -> shop cart   search -> home
    cart -> home shop                done -> home shop
    noresult -> search home

Actions (``valid_actions`` lists them in this order)::

    click LINK        # any visible link: page = LINK, prev = old page, field = empty
    back              # only when prev != none: swap page and prev, field = empty
    type WORD         # search page only, WORD in lamp mug book pen shoe: field = WORD
    submit            # search page: go to the typed item (prev = search), to
                      # ``noresult`` for an unsold word, nothing when the field is empty;
                      # cart page: place the order (page done, cart 0), nothing if the cart is empty
    add to cart       # item pages (lamp mug book pen): cart + 1, capped at 5

Ambiguities (different actions, same next state): ``back`` equals ``click PREV``
whenever the previous page is a visible link; ``submit`` with an empty field or
an empty cart, ``add to cart`` with a full cart and ``type WORD`` with ``WORD``
already typed leave the state unchanged.
"""

from __future__ import annotations

import random

from .base import Environment, normalize_text

ITEMS = ("lamp", "mug", "book", "pen")
SEARCH_WORDS = ("lamp", "mug", "book", "pen", "shoe")
SITE = {
    "home": ("shop", "search", "cart"),
    "shop": ("home", "lamp", "mug", "book", "pen"),
    "search": ("home",),
    "cart": ("home", "shop"),
    "lamp": ("shop", "cart"),
    "mug": ("shop", "cart"),
    "book": ("shop", "cart"),
    "pen": ("shop", "cart"),
    "done": ("home", "shop"),
    "noresult": ("search", "home"),
}
START_PAGES = ("home", "shop", "search", "cart", "lamp", "mug", "book", "pen")


class WebEnv(Environment):
    """A five-field text rendering of a tiny shop website."""

    name = "web"

    def __init__(self, max_cart: int = 5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(max_cart, int) or isinstance(max_cart, bool) or not 1 <= max_cart <= 9:
            raise ValueError(f"max_cart must be an integer in [1, 9], got {max_cart!r}")
        self.max_cart = max_cart

    def __repr__(self) -> str:
        return f"WebEnv(max_cart={self.max_cart})"

    # ------------------------------------------------------------------ text <-> state
    def _parse(self, state: str) -> dict:
        if not isinstance(state, str):
            raise self._bad_state(state, "expected a string")
        parts = [p.split() for p in normalize_text(state).split("|")]
        keys = ["page", "links", "field", "cart", "prev"]
        if len(parts) != 5 or [p[0] if p else "" for p in parts] != keys:
            raise self._bad_state(state, "expected 'page P | links ... | field F | cart N | prev P'")
        page_t, links_t, field_t, cart_t, prev_t = parts
        if len(page_t) != 2 or page_t[1] not in SITE:
            raise self._bad_state(state, "unknown page")
        page = page_t[1]
        if tuple(links_t[1:]) != SITE[page]:
            raise self._bad_state(state, f"page {page} shows links {' '.join(SITE[page])}")
        if len(field_t) != 2 or field_t[1] not in ("empty",) + SEARCH_WORDS:
            raise self._bad_state(state, "bad field value")
        if len(cart_t) != 2 or not cart_t[1].isdigit() or not 0 <= int(cart_t[1]) <= self.max_cart:
            raise self._bad_state(state, f"cart must be 0..{self.max_cart}")
        if len(prev_t) != 2 or prev_t[1] not in tuple(SITE) + ("none",):
            raise self._bad_state(state, "bad prev page")
        return {"page": page, "field": field_t[1], "cart": int(cart_t[1]), "prev": prev_t[1]}

    @staticmethod
    def _render(s: dict) -> str:
        links = " ".join(SITE[s["page"]])
        return f"page {s['page']} | links {links} | field {s['field']} | cart {s['cart']} | prev {s['prev']}"

    # ------------------------------------------------------------------ API
    def initial_state(self, rng: random.Random) -> str:
        page = rng.choice(START_PAGES)
        cart = rng.randint(0, min(2, self.max_cart))
        return self._render({"page": page, "field": "empty", "cart": cart, "prev": "none"})

    def all_actions(self) -> list[str]:
        """Every action string this environment can accept in some state."""
        return (
            [f"click {p}" for p in SITE]
            + ["back"]
            + [f"type {w}" for w in SEARCH_WORDS]
            + ["submit", "add to cart"]
        )

    def valid_actions(self, state: str) -> list[str]:
        s = self._parse(state)
        page = s["page"]
        actions = [f"click {link}" for link in SITE[page]]
        if s["prev"] != "none":
            actions.append("back")
        if page == "search":
            actions += [f"type {w}" for w in SEARCH_WORDS]
        if page in ("search", "cart"):
            actions.append("submit")
        if page in ITEMS:
            actions.append("add to cart")
        return actions

    def apply(self, state: str, action: str) -> str:
        s = self._parse(state)
        act = normalize_text(action)
        tokens = act.split()
        page = s["page"]
        if len(tokens) == 2 and tokens[0] == "click":
            if tokens[1] not in SITE[page]:
                raise self._invalid(act, f"no link {tokens[1]!r} on page {page} (links: {' '.join(SITE[page])})")
            s.update(page=tokens[1], prev=page, field="empty")
        elif tokens == ["back"]:
            if s["prev"] == "none":
                raise self._invalid(act, "there is no previous page (prev none)")
            s.update(page=s["prev"], prev=page, field="empty")
        elif len(tokens) == 2 and tokens[0] == "type":
            if page != "search":
                raise self._invalid(act, f"there is no text field on page {page}, only on search")
            if tokens[1] not in SEARCH_WORDS:
                raise self._invalid(act, f"unknown word {tokens[1]!r}, expected one of {list(SEARCH_WORDS)}")
            s["field"] = tokens[1]
        elif tokens == ["submit"]:
            if page == "search":
                if s["field"] in ITEMS:
                    s.update(page=s["field"], prev=page, field="empty")
                elif s["field"] != "empty":
                    s.update(page="noresult", prev=page, field="empty")
            elif page == "cart":
                if s["cart"] > 0:
                    s.update(page="done", prev=page, cart=0)
            else:
                raise self._invalid(act, f"there is no form to submit on page {page}")
        elif tokens == ["add", "to", "cart"]:
            if page not in ITEMS:
                raise self._invalid(act, f"page {page} is not an item page ({' '.join(ITEMS)})")
            s["cart"] = min(s["cart"] + 1, self.max_cart)
        else:
            raise self._invalid(act, "expected 'click LINK', 'back', 'type WORD', 'submit' or 'add to cart'")
        return self._render(s)
