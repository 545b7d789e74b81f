# Secrets Manager entries the service reads at task start (ECS injects them as environment
# variables; see ecs.tf). Terraform creates the entries, never their values: put those with
# `aws secretsmanager put-secret-value` (README, "Secret values") so no secret ever lands in
# Terraform state or a plan.

# One per OAuth provider: its client secret, as plain text. Injected as
# TOKEN_STORE_PROVIDERS__<NAME>__CLIENT_SECRET.
resource "aws_secretsmanager_secret" "provider_client_secret" {
  #checkov:skip=CKV2_AWS_57: An OAuth client secret is issued by the provider's console (Google Cloud, Entra ID); no rotation Lambda can mint one. Rotate it there, put the new value, redeploy.
  for_each = var.oauth_providers

  name                    = "${var.name}/providers/${each.key}/client-secret"
  description             = "token-store: OAuth client secret of provider ${each.key} (TOKEN_STORE_PROVIDERS__${upper(each.key)}__CLIENT_SECRET)"
  kms_key_id              = aws_kms_key.infra.arn
  recovery_window_in_days = 30
}

# The API clients: names, SHA-256 hashes of their keys and permissions, as the TOML inline
# array the service's `[[clients]]` section holds, e.g.
#   [{name="iam-sync", key_sha256="<64 hex>", permissions=["read","refresh"]}]
# Injected as TOKEN_STORE_CLIENTS, which replaces any [[clients]] of the config file.
resource "aws_secretsmanager_secret" "clients" {
  #checkov:skip=CKV2_AWS_57: Holds hashes of API keys that their callers generate; rotating means adding the caller's new hash, which no rotation Lambda can do for them.
  name                    = "${var.name}/clients"
  description             = "token-store: API clients ([[clients]] as a TOML inline array; TOKEN_STORE_CLIENTS)"
  kms_key_id              = aws_kms_key.infra.arn
  recovery_window_in_days = 30
}

locals {
  # The database password: RDS's own secret (JSON, key "password") unless a full URL secret
  # for a dedicated role is given. sqlx takes PGPASSWORD when the URL carries none.
  database_secrets = var.database_url_secret_arn == null ? [
    {
      name      = "PGPASSWORD"
      valueFrom = "${aws_db_instance.this.master_user_secret[0].secret_arn}:password::"
    },
    ] : [
    {
      name      = "TOKEN_STORE_DATABASE__URL"
      valueFrom = var.database_url_secret_arn
    },
  ]

  service_secrets = concat(
    local.database_secrets,
    [
      {
        name      = "TOKEN_STORE_CLIENTS"
        valueFrom = aws_secretsmanager_secret.clients.arn
      },
    ],
    [
      for name, secret in aws_secretsmanager_secret.provider_client_secret : {
        name      = "TOKEN_STORE_PROVIDERS__${upper(name)}__CLIENT_SECRET"
        valueFrom = secret.arn
      }
    ],
  )

  # Every secret ARN the execution role may read.
  readable_secret_arns = compact(concat(
    [
      aws_db_instance.this.master_user_secret[0].secret_arn,
      aws_secretsmanager_secret.clients.arn,
      var.database_url_secret_arn,
    ],
    [for secret in aws_secretsmanager_secret.provider_client_secret : secret.arn],
  ))
}
