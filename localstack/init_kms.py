#!/usr/bin/env python3
"""Create the local-development KMS key and alias in LocalStack (idempotent).

Run with a Python that has boto3 (the LocalStack virtualenv made by
scripts/localstack.sh, or the LocalStack container's own Python via
localstack/init/ready.d/10-kms.sh):

    AWS_ENDPOINT_URL=http://127.0.0.1:4566 python localstack/init_kms.py

What it ensures:
  * a symmetric ENCRYPT_DECRYPT key (SYMMETRIC_DEFAULT) with the FIXED key id
    below, created with LocalStack's special tags:
      - ``_custom_id_``           -> LocalStack uses the tag value as the KeyId;
      - ``_custom_key_material_`` -> LocalStack uses these bytes (base64) as the
                                     key material (the tag is dropped afterwards).
    LocalStack community keeps no state across restarts; because id and material
    are fixed, a restarted LocalStack plus this init gives back the same key, so
    data keys wrapped (GenerateDataKey) before the restart still decrypt after it.
  * the alias ``alias/token-store-local`` pointing at that key.

Idempotent: an existing key is kept as is (LocalStack would silently REPLACE a
key created again with the same _custom_id_, so we never re-create it). If the
key was left disabled or pending deletion (e.g. by a manual experiment) it is
re-enabled. A second run changes nothing and exits 0.

Caveat: do not rotate this key (RotateKeyOnDemand/EnableKeyRotation): rotated
material is not fixed, so ciphertexts made after a rotation would not decrypt
after a LocalStack restart. Tests that disable/rotate keys should create their
own keys.
"""

import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

# Fixed identifiers of the local-development key (must be a 36-char UUID:
# LocalStack embeds the key id in its ciphertext header with that fixed length).
KEY_ID = "6f1c8f3e-2b7a-4d5e-9c1a-0d3e5f7a9b21"
ALIAS = "alias/token-store-local"

# 32 fixed bytes (AES-256 key material), base64. This is a LOCAL-DEVELOPMENT
# value for LocalStack only, committed on purpose so every developer machine and
# every LocalStack restart get the same key. It is NOT a secret and must never
# be used for a real KMS key.
LOCAL_DEV_KEY_MATERIAL_B64 = "VyS06Kzm0abAkTmdHXpixTRoZIv6Ai0YZzV0iw5mwJM="

ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
REGION = "us-east-1"


def log(msg: str) -> None:
    print(f"[init_kms] {msg}", flush=True)


def error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


def kms_client():
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id="test",  # LocalStack's conventional dummy credentials
        aws_secret_access_key="test",
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def describe(kms, key_id: str):
    try:
        return kms.describe_key(KeyId=key_id)["KeyMetadata"]
    except ClientError as err:
        if error_code(err) == "NotFoundException":
            return None
        raise


def ensure_key(kms) -> dict:
    meta = describe(kms, KEY_ID)
    if meta is None:
        meta = kms.create_key(
            Description="token-store local development key (LocalStack, fixed id and material)",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Tags=[
                {"TagKey": "_custom_id_", "TagValue": KEY_ID},
                {"TagKey": "_custom_key_material_", "TagValue": LOCAL_DEV_KEY_MATERIAL_B64},
                {"TagKey": "project", "TagValue": "token-store"},
            ],
        )["KeyMetadata"]
        if meta["KeyId"] != KEY_ID:
            sys.exit(
                f"[init_kms] ERROR: LocalStack ignored the _custom_id_ tag "
                f"(got key id {meta['KeyId']}, wanted {KEY_ID}); is this LocalStack 4.9.2?"
            )
        log(f"created key {KEY_ID}")
        return meta

    if meta.get("KeyUsage") != "ENCRYPT_DECRYPT" or meta.get("KeySpec") != "SYMMETRIC_DEFAULT":
        sys.exit(
            f"[init_kms] ERROR: key {KEY_ID} exists but is {meta.get('KeySpec')}/"
            f"{meta.get('KeyUsage')}, not SYMMETRIC_DEFAULT/ENCRYPT_DECRYPT. "
            "Restart LocalStack (scripts/localstack.sh stop && scripts/localstack.sh start)."
        )
    state = meta.get("KeyState")
    if state == "PendingDeletion":
        kms.cancel_key_deletion(KeyId=KEY_ID)  # leaves it Disabled
        log(f"key {KEY_ID} was pending deletion: deletion cancelled")
        state = "Disabled"
    if state == "Disabled":
        kms.enable_key(KeyId=KEY_ID)
        log(f"key {KEY_ID} was disabled: re-enabled")
    elif state != "Enabled":
        sys.exit(f"[init_kms] ERROR: key {KEY_ID} is in state {state}; restart LocalStack.")
    else:
        log(f"key {KEY_ID} already exists (Enabled)")
    return describe(kms, KEY_ID)


def ensure_alias(kms) -> None:
    current = None
    for page in kms.get_paginator("list_aliases").paginate():
        for alias in page.get("Aliases", []):
            if alias.get("AliasName") == ALIAS:
                current = alias.get("TargetKeyId")
    if current == KEY_ID:
        log(f"alias {ALIAS} already points at {KEY_ID}")
    elif current is None:
        kms.create_alias(AliasName=ALIAS, TargetKeyId=KEY_ID)
        log(f"created alias {ALIAS} -> {KEY_ID}")
    else:
        kms.update_alias(AliasName=ALIAS, TargetKeyId=KEY_ID)
        log(f"alias {ALIAS} pointed at {current}; re-pointed at {KEY_ID}")


def main() -> int:
    kms = kms_client()
    try:
        meta = ensure_key(kms)
        ensure_alias(kms)
    except ClientError as err:
        print(f"[init_kms] ERROR: KMS call failed at {ENDPOINT}: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # connection refused, timeouts, ...
        print(f"[init_kms] ERROR: cannot talk to KMS at {ENDPOINT}: {err}", file=sys.stderr)
        return 1
    log(f"key id:  {KEY_ID}")
    log(f"key arn: {meta['Arn']}")
    log(f"alias:   {ALIAS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
