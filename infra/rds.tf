# PostgreSQL on RDS: encrypted with the infra key, private subnets only, TLS forced by the
# parameter group, master password generated and kept by RDS in Secrets Manager (never in
# Terraform state), deletion protection, backups, enhanced monitoring and log exports.

resource "aws_db_subnet_group" "this" {
  name        = var.name
  description = "token-store database subnets (private)"
  subnet_ids  = local.database_subnet_ids
}

resource "aws_db_parameter_group" "this" {
  name        = "${var.name}-postgres${var.db_engine_version}"
  family      = "postgres${var.db_engine_version}"
  description = "token-store: TLS required, DDL and slow statements logged without bind values"

  # Refuse every connection that is not TLS.
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Log DDL and statements slower than 1 s, but never their bind values: those are
  # ciphertexts and wrapped data keys (no plaintext, still nothing a log needs).
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_parameter_max_length"
    value = "0"
  }
  parameter {
    name  = "log_parameter_max_length_on_error"
    value = "0"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }
  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# RDS would create these on first export, unencrypted and kept forever.
resource "aws_cloudwatch_log_group" "rds" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${var.name}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.infra.arn
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "this" {
  #checkov:skip=CKV_AWS_161: IAM database authentication is a variable (db_iam_authentication, default off): token-store authenticates with the password injected from Secrets Manager and cannot mint IAM auth tokens.
  identifier = var.name

  engine                     = "postgres"
  engine_version             = var.db_engine_version
  auto_minor_version_upgrade = true
  instance_class             = var.db_instance_class
  parameter_group_name       = aws_db_parameter_group.this.name
  ca_cert_identifier         = var.db_ca_cert_identifier

  allocated_storage     = var.db_allocated_storage
  max_allocated_storage = var.db_max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.infra.arn

  db_name                       = var.db_name
  username                      = var.db_username
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.infra.arn

  iam_database_authentication_enabled = var.db_iam_authentication

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = var.db_multi_az

  backup_retention_period   = var.db_backup_retention_days
  copy_tags_to_snapshot     = true
  deletion_protection       = var.db_deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"
  delete_automated_backups  = false

  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]
  monitoring_interval                   = 60
  monitoring_role_arn                   = aws_iam_role.rds_monitoring.arn
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.infra.arn
  performance_insights_retention_period = 7

  apply_immediately = false

  depends_on = [aws_cloudwatch_log_group.rds]
}
