"""Whether this node's master key opens the store's secrets (DKIM private keys, upstream passwords).

A node given another key would answer every submission 451 and sign nothing. Start-up refuses
(:func:`check_master_key`, exit 2) and ``/readyz`` is not ready (:func:`unreadable_secret`) while
the key does not open them: a second node started on an empty store with its own key, before the
first sealed anything, is caught the moment a secret exists.
"""

from __future__ import annotations

from relay.secrets import DecryptionError, MasterKey
from relay.store import Store
from relay.vocab import ConfigError


def unreadable_secret(store: Store, master_key: MasterKey) -> str | None:
    """What of the store's newest secrets the key cannot open ("a DKIM private key"...), or None."""
    for what, token, aad in store.directory.sealed_samples():
        try:
            master_key.decrypt_str(token, aad=aad)
        except DecryptionError:
            return what
    return None


def check_master_key(store: Store, master_key: MasterKey) -> None:
    """ConfigError naming the key's fingerprint and what it could not open, never a secret."""
    what = unreadable_secret(store, master_key)
    if what is not None:
        raise ConfigError(
            f"the master key (fingerprint {master_key.fingerprint}) does not open {what} in the store: "
            "this store's secrets were sealed with another key. Give this node the key the store was "
            "made with (data_dir/master.key, or env RELAY_MASTER_KEY); see README, Security defaults")
