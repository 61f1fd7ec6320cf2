"""feeds.*: fan-out into followers' feeds and feed upkeep. The data contract is store.py."""
