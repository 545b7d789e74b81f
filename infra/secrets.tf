# Secrets Manager entries. ECS injects most of them as environment variables at task start
# (ecs.tf); the application database credentials the service reads itself, at run time.
# Terraform creates the entries, never their values: put those with
# `aws secretsmanager put-secret-value` (README, "Deploying") so no secret ever lands in
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

# ---------------------------------------------------------------------------------------
# The application database role's credentials

locals {
  db_app_secret_name = "${var.name}/database/app"
}

# The credentials of token_store_service, the login the service connects as (a member of
# the least-privilege role token_store_app, nothing more), in the JSON shape
# of an RDS secret: {"engine": "postgres", "host", "port", "dbname", "username",
# "password"}. The service reads it itself (TOKEN_STORE_DATABASE__PASSWORD_SECRET_ARN), again
# every password_refresh_seconds and after an authentication failure, so a rotation needs
# no restart. Its first value is put by hand (README, "Database credentials"); from then on
# the rotation below changes it every db_app_password_rotation_days.
resource "aws_secretsmanager_secret" "db_app" {
  name                    = local.db_app_secret_name
  description             = "token-store: credentials of the ${local.db_app_username} database login, member of ${local.db_app_role} (TOKEN_STORE_DATABASE__PASSWORD_SECRET_ARN), rotated by Secrets Manager"
  kms_key_id              = aws_kms_key.infra.arn
  recovery_window_in_days = 30
}

# AWS's own single-user rotation function for PostgreSQL, from the serverless application
# repository: it logs in as token_store_service with the current password and sets the new one
# (ALTER USER ... PASSWORD). It runs in the tasks' subnets with a security group of its own
# that reaches the database and HTTPS (Secrets Manager, through NAT or an endpoint).
resource "aws_serverlessapplicationrepository_cloudformation_stack" "db_app_rotation" {
  name           = "${var.name}-db-app-rotation"
  application_id = "arn:aws:serverlessrepo:us-east-1:297356227824:applications/SecretsManagerRDSPostgreSQLRotationSingleUser"
  capabilities   = ["CAPABILITY_IAM", "CAPABILITY_RESOURCE_POLICY"]

  parameters = {
    endpoint            = "https://secretsmanager.${local.region}.${local.dns_suffix}"
    functionName        = "${var.name}-db-app-rotation"
    vpcSubnetIds        = join(",", var.private_subnet_ids)
    vpcSecurityGroupIds = aws_security_group.db_rotation.id
  }
}

resource "aws_secretsmanager_secret_rotation" "db_app" {
  secret_id           = aws_secretsmanager_secret.db_app.id
  rotation_lambda_arn = aws_serverlessapplicationrepository_cloudformation_stack.db_app_rotation.outputs["RotationLambdaARN"]
  # Not at creation: the secret has no value until the bootstrap step puts one.
  rotate_immediately = false

  rotation_rules {
    automatically_after_days = var.db_app_password_rotation_days
  }
}

locals {
  # The database credentials a task gets from ECS at start, by task definition:
  # the service reads its own at run time (above) and gets none here; `token-store migrate`
  # runs as the RDS master user (the RDS-managed secret); `token-store rewrap` runs as
  # token_store_service with the password current when it starts.
  migrate_database_secrets = [
    {
      name      = "PGPASSWORD"
      valueFrom = "${aws_db_instance.this.master_user_secret[0].secret_arn}:password::"
    },
  ]
  rewrap_database_secrets = [
    {
      name      = "PGPASSWORD"
      valueFrom = "${aws_secretsmanager_secret.db_app.arn}:password::"
    },
  ]

  service_secrets = concat(
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

  # Every secret ARN the execution role may read into a task's environment.
  readable_secret_arns = concat(
    [
      aws_db_instance.this.master_user_secret[0].secret_arn,
      aws_secretsmanager_secret.db_app.arn,
      aws_secretsmanager_secret.clients.arn,
    ],
    [for secret in aws_secretsmanager_secret.provider_client_secret : secret.arn],
  )
}
