"""Topic-level tries: the subscription index and the retained-message store.

Both are tries keyed by topic level, so matching costs the depth of the topic (times the ``+``
branches), not the number of subscriptions or retained messages. The subscription index also
caches the match result per topic name; any subscribe or unsubscribe clears the cache.

Wildcards follow MQTT: ``+`` fills one level, ``#`` the rest (including the parent: ``a/#`` matches
``a``), and neither matches a topic starting with ``$`` at the first level.
"""

from __future__ import annotations

from typing import Final

from openfeeder.iot.broker.session import Message, SharedGroup, Subscription

__all__ = ["RetainedStore", "SubscriptionIndex", "parse_filter"]

SHARE_PREFIX: Final = "$share/"
_CACHE_LIMIT: Final = 8192


def parse_filter(text: str) -> tuple[str | None, tuple[str, ...]] | None:
    """``(group, levels)`` of a subscription filter, or None if it is not a valid filter.

    ``group`` is the shared-subscription group of ``$share/{group}/{filter}`` (else None);
    ``levels`` are the levels of the filter without that prefix.
    """
    if not text or "\x00" in text:
        return None
    group: str | None = None
    if text.startswith(SHARE_PREFIX):
        parts = text.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            return None
        if "+" in parts[1] or "#" in parts[1]:
            return None
        group, text = parts[1], parts[2]
    levels = tuple(text.split("/"))
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            return None
        if "+" in level and level != "+":
            return None
    return group, levels


class _SubNode:
    __slots__ = ("children", "groups", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _SubNode] = {}
        self.subscribers: list[Subscription] = []
        self.groups: dict[str, SharedGroup] = {}

    def empty(self) -> bool:
        return not (self.children or self.subscribers or self.groups)


Match = tuple[tuple[Subscription, ...], tuple[SharedGroup, ...]]


class SubscriptionIndex:
    """Every subscription of every session, by filter level."""

    __slots__ = ("_cache", "_root", "count")

    def __init__(self) -> None:
        self._root = _SubNode()
        self._cache: dict[str, Match] = {}
        self.count = 0

    def add(self, sub: Subscription) -> None:
        node = self._root
        for level in sub.levels:
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _SubNode()
            node = child
        if sub.group is None:
            node.subscribers.append(sub)
        else:
            group = node.groups.get(sub.group)
            if group is None:
                group = node.groups[sub.group] = SharedGroup(sub.group)
            group.members.append(sub)
        self.count += 1
        self._cache.clear()

    def remove(self, sub: Subscription) -> None:
        path = [self._root]
        node = self._root
        for level in sub.levels:
            child = node.children.get(level)
            if child is None:
                return
            path.append(child)
            node = child
        if sub.group is None:
            if sub not in node.subscribers:
                return
            node.subscribers.remove(sub)
        else:
            group = node.groups.get(sub.group)
            if group is None or sub not in group.members:
                return
            index = group.members.index(sub)
            del group.members[index]
            if index < group.next_index:
                group.next_index -= 1
            if not group.members:
                del node.groups[sub.group]
        self.count -= 1
        self._cache.clear()
        for depth in range(len(sub.levels), 0, -1):
            if not path[depth].empty():
                break
            del path[depth - 1].children[sub.levels[depth - 1]]

    def match(self, topic: str) -> Match:
        """Subscriptions (not shared) and shared groups whose filter matches ``topic``."""
        found = self._cache.get(topic)
        if found is not None:
            return found
        levels = topic.split("/")
        count = len(levels)
        dollar = topic.startswith("$")
        subs: list[Subscription] = []
        groups: list[SharedGroup] = []
        stack = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            children = node.children
            wild = index or not dollar
            if wild:
                rest = children.get("#")
                if rest is not None:
                    subs.extend(rest.subscribers)
                    groups.extend(rest.groups.values())
            if index == count:
                subs.extend(node.subscribers)
                groups.extend(node.groups.values())
                continue
            if wild:
                plus = children.get("+")
                if plus is not None:
                    stack.append((plus, index + 1))
            exact = children.get(levels[index])
            if exact is not None:
                stack.append((exact, index + 1))
        result = (tuple(subs), tuple(groups))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = result
        return result


class _RetainedNode:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _RetainedNode] = {}
        self.message: Message | None = None


class RetainedStore:
    """The last retained message per topic."""

    __slots__ = ("_root", "count")

    def __init__(self) -> None:
        self._root = _RetainedNode()
        self.count = 0

    def set(self, message: Message) -> None:
        """Store ``message`` for its topic, or delete the topic's message if the payload is empty."""
        levels = message.topic.split("/")
        if not message.payload:
            self._delete(levels)
            return
        node = self._root
        for level in levels:
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _RetainedNode()
            node = child
        if node.message is None:
            self.count += 1
        node.message = message

    def _delete(self, levels: list[str]) -> None:
        path = [self._root]
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        if path[-1].message is None:
            return
        path[-1].message = None
        self.count -= 1
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.message is not None or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]

    def match(self, levels: tuple[str, ...]) -> list[Message]:
        """Retained messages whose topic matches the filter ``levels``."""
        found: list[Message] = []
        last = len(levels)
        stack = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            if index == last:
                if node.message is not None:
                    found.append(node.message)
                continue
            level = levels[index]
            if level == "#":
                if node.message is not None and index:
                    found.append(node.message)
                self._collect(node, found, top=not index)
            elif level == "+":
                stack.extend(
                    (child, index + 1)
                    for name, child in node.children.items()
                    if index or not name.startswith("$")
                )
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, index + 1))
        return found

    @staticmethod
    def _collect(node: _RetainedNode, found: list[Message], *, top: bool) -> None:
        stack = [
            child for name, child in node.children.items() if not (top and name.startswith("$"))
        ]
        while stack:
            current = stack.pop()
            if current.message is not None:
                found.append(current.message)
            stack.extend(current.children.values())
