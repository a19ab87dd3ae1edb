"""``tools``: tool calling against deterministic simulated APIs.

In the spirit of StableToolBench's simulated APIs, every call gets a fixed
response from lookup tables. The state is a small key=value memory plus the
response of the last call, written as JSON-ish text with spaces around every token::

    mem cur CUR quota Q | { api : weather , city : paris , temp : 21 , sky : sun }

* ``cur`` is the currency in which hotel prices are quoted.
* ``quota`` (``0`` to ``quota``, default 5) is the rate limit: every API call
  (all actions but ``set cur``) uses one unit; a call made with ``quota 0`` fails
  with ``{ error : rate limit }`` and refills the quota to its maximum.

Responses:

* start:      ``{ status : ready }``
* rate limit: ``{ error : rate limit }``
* weather:    ``{ api : weather , city : CITY , temp : T , sky : SKY }``
* hotel:      ``{ api : hotel , city : CITY , name : NAME , price : P , cur : CUR }``
  (the price is quoted in the memory currency) or ``{ api : hotel , error : no results }``
* settings:   ``{ api : settings , cur : CUR }``
* convert:    ``{ api : convert , amount : N , from : A , to : B , value : V }``

Actions (``valid_actions`` lists them in this order)::

    get_weather city CITY        # CITY in paris rome tokyo oslo
    search hotel CITY            # hotels exist in paris and rome only
    set cur CUR                  # CUR != current memory currency; updates the memory,
                                 # answers { api : settings , cur : CUR }, uses no quota
    convert N A B                # only right after a hotel price (N = price, A = its
                                 # currency) or a conversion (N = value, A = its target),
                                 # B != A; V = N * RATE[B] // RATE[A], RATE eur 2 usd 3 gbp 1

So at most 12 actions are valid in a state.

Ambiguities (different actions, same next state): ``search hotel tokyo`` and
``search hotel oslo`` both return the same ``error : no results`` response, and
with ``quota 0`` every API call gives the same ``error : rate limit`` state.
"""

from __future__ import annotations

import random

from .base import Environment, normalize_text

CITIES = ("paris", "rome", "tokyo", "oslo")
WEATHER = {"paris": (21, "sun"), "rome": (27, "sun"), "tokyo": (18, "rain"), "oslo": (9, "snow")}
HOTELS = {"paris": ("ritz", 4), "rome": ("roma", 2)}  # name, price in eur
CURRENCIES = ("eur", "usd", "gbp")
RATE = {"eur": 2, "usd": 3, "gbp": 1}


def convert_amount(amount: int, src: str, dst: str) -> int:
    """The simulated exchange: ``amount * RATE[dst] // RATE[src]``."""
    return amount * RATE[dst] // RATE[src]


def _response(pairs: list[tuple[str, object]]) -> str:
    return "{ " + " , ".join(f"{k} : {v}" for k, v in pairs) + " }"


class ToolsEnv(Environment):
    """Simulated weather / hotel / currency APIs with a one-key memory."""

    name = "tools"

    def __init__(self, quota: int = 5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(quota, int) or isinstance(quota, bool) or not 1 <= quota <= 9:
            raise ValueError(f"quota must be an integer in [1, 9], got {quota!r}")
        self.quota = quota

    def __repr__(self) -> str:
        return f"ToolsEnv(quota={self.quota})"

    # ------------------------------------------------------------------ text <-> state
    def _parse(self, state: str) -> tuple[str, int, dict[str, str]]:
        if not isinstance(state, str):
            raise self._bad_state(state, "expected a string")
        text = normalize_text(state)
        mem, sep, resp = text.partition(" | ")
        mem_t = mem.split()
        if (
            not sep
            or len(mem_t) != 5
            or mem_t[:2] != ["mem", "cur"]
            or mem_t[2] not in CURRENCIES
            or mem_t[3] != "quota"
            or not mem_t[4].isdigit()
            or int(mem_t[4]) > self.quota
        ):
            raise self._bad_state(state, f"expected 'mem cur CUR quota Q | {{ ... }}' with Q in 0..{self.quota}")
        if not (resp.startswith("{ ") and resp.endswith(" }")):
            raise self._bad_state(state, "the response must be wrapped in '{ ... }'")
        fields: dict[str, str] = {}
        for item in resp[2:-2].split(" , "):
            key, colon, value = item.partition(" : ")
            if not colon or not key or not value or " " in key:
                raise self._bad_state(state, f"bad response field {item!r}")
            fields[key] = value
        for key in ("price", "amount", "value"):
            if key in fields and not fields[key].isdigit():
                raise self._bad_state(state, f"{key} must be a number")
        for key in ("cur", "from", "to"):
            if key in fields and fields[key] not in CURRENCIES:
                raise self._bad_state(state, f"unknown currency {fields[key]!r}")
        return mem_t[2], int(mem_t[4]), fields

    @staticmethod
    def _render(cur: str, quota: int, response: str) -> str:
        return f"mem cur {cur} quota {quota} | {response}"

    @staticmethod
    def _chain(fields: dict[str, str]) -> tuple[int, str] | None:
        """(amount, currency) that the last response offers for a conversion, if any."""
        api = fields.get("api")
        if api == "hotel" and "price" in fields and "cur" in fields:
            return int(fields["price"]), fields["cur"]
        if api == "convert" and "value" in fields and "to" in fields:
            return int(fields["value"]), fields["to"]
        return None

    # ------------------------------------------------------------------ API
    def initial_state(self, rng: random.Random) -> str:
        return self._render(rng.choice(CURRENCIES), rng.randint(0, self.quota), _response([("status", "ready")]))

    def all_actions(self) -> list[str]:
        """Every action string of the fixed vocabulary except ``convert`` (whose amounts vary)."""
        return (
            [f"get_weather city {c}" for c in CITIES]
            + [f"search hotel {c}" for c in CITIES]
            + [f"set cur {c}" for c in CURRENCIES]
        )

    def valid_actions(self, state: str) -> list[str]:
        cur, _, fields = self._parse(state)
        actions = [f"get_weather city {c}" for c in CITIES] + [f"search hotel {c}" for c in CITIES]
        actions += [f"set cur {c}" for c in CURRENCIES if c != cur]
        chain = self._chain(fields)
        if chain is not None:
            amount, src = chain
            actions += [f"convert {amount} {src} {dst}" for dst in CURRENCIES if dst != src]
        return actions

    def apply(self, state: str, action: str) -> str:
        cur, quota, fields = self._parse(state)
        act = normalize_text(action)
        tokens = act.split()
        if len(tokens) == 3 and tokens[:2] == ["get_weather", "city"]:
            city = tokens[2]
            if city not in WEATHER:
                raise self._invalid(act, f"unknown city {city!r}, expected one of {list(CITIES)}")
            temp, sky = WEATHER[city]
            resp = _response([("api", "weather"), ("city", city), ("temp", temp), ("sky", sky)])
        elif len(tokens) == 3 and tokens[:2] == ["search", "hotel"]:
            city = tokens[2]
            if city not in CITIES:
                raise self._invalid(act, f"unknown city {city!r}, expected one of {list(CITIES)}")
            if city in HOTELS:
                name, price = HOTELS[city]
                price = convert_amount(price, "eur", cur)
                resp = _response([("api", "hotel"), ("city", city), ("name", name), ("price", price), ("cur", cur)])
            else:
                resp = _response([("api", "hotel"), ("error", "no results")])
        elif len(tokens) == 3 and tokens[:2] == ["set", "cur"]:
            new = tokens[2]
            if new not in CURRENCIES:
                raise self._invalid(act, f"unknown currency {new!r}, expected one of {list(CURRENCIES)}")
            if new == cur:
                raise self._invalid(act, f"the memory currency is already {cur}")
            cur = new
            resp = _response([("api", "settings"), ("cur", new)])
        elif len(tokens) == 4 and tokens[0] == "convert":
            chain = self._chain(fields)
            if chain is None:
                raise self._invalid(act, "convert needs a price or value in the last response (search a hotel first)")
            amount, src = chain
            if tokens[1] != str(amount) or tokens[2] != src:
                raise self._invalid(
                    act, f"the last response offers {amount} {src}, expected 'convert {amount} {src} CUR'"
                )
            dst = tokens[3]
            if dst not in CURRENCIES or dst == src:
                raise self._invalid(act, f"target currency must be one of {[c for c in CURRENCIES if c != src]}")
            value = convert_amount(amount, src, dst)
            resp = _response([("api", "convert"), ("amount", amount), ("from", src), ("to", dst), ("value", value)])
        else:
            raise self._invalid(
                act, "expected 'get_weather city CITY', 'search hotel CITY', 'set cur CUR' or 'convert N FROM TO'"
            )
        if tokens[0] != "set":  # an API call: uses one unit of quota, or fails at 0 and refills
            if quota == 0:
                quota, resp = self.quota, _response([("error", "rate limit")])
            else:
                quota -= 1
        return self._render(cur, quota, resp)
