# Security groups only: the VPC and its subnets, NAT and VPC endpoints belong to the
# platform and come in as variables. Three groups, each opened only to the next hop:
#   callers --443--> alb --container_port--> service --5432--> db

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "token-store internal ALB: HTTPS from the configured callers only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_client_sgs" {
  for_each = toset(var.client_security_group_ids)

  security_group_id            = aws_security_group.alb.id
  description                  = "HTTPS from caller security group ${each.value}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_client_cidrs" {
  for_each = toset(var.client_cidr_blocks)

  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from caller network ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_service" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the token-store tasks (requests and /readyz health checks)"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
}

# ---------------------------------------------------------------------------------------

resource "aws_security_group" "service" {
  name        = "${var.name}-service"
  description = "token-store Fargate tasks (service and rewrap)"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "service_from_alb" {
  security_group_id            = aws_security_group.service.id
  description                  = "From the internal ALB only"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = var.container_port
  to_port                      = var.container_port
}

resource "aws_vpc_security_group_egress_rule" "service_to_db" {
  security_group_id            = aws_security_group.service.id
  description                  = "PostgreSQL on RDS"
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

# KMS, Secrets Manager, ECR, CloudWatch Logs and the OAuth providers' token endpoints
# (oauth2.googleapis.com, login.microsoftonline.com, ...) are HTTPS endpoints without
# stable addresses: 443 to anywhere, through the VPC's NAT or VPC endpoints.
resource "aws_vpc_security_group_egress_rule" "service_https" {
  security_group_id = aws_security_group.service.id
  description       = "HTTPS to AWS APIs and OAuth provider endpoints"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# ---------------------------------------------------------------------------------------

resource "aws_security_group" "db" {
  name        = "${var.name}-db"
  description = "token-store RDS PostgreSQL: from the token-store tasks only; no egress"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "db_from_service" {
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from the token-store tasks"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}
