# terraform plan -var-file=environments/dev.tfvars -var image_tag=<tag> (TF_VAR_admin_token set)
# A small, cheap stack: one NAT gateway, one T3 medium with no spare, a single-AZ micro database
# that may be deleted, Container Insights off. Everything else is the defaults (variables.tf).
environment     = "dev"
certificate_arn = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"

single_nat_gateway = true
instance_type      = "t3.medium"
asg_min_size       = 1
asg_max_size       = 3
container_insights = "disabled"
# No spare instance: a scale-out waits for a new one (1-5 minutes), acceptable in dev.
capacity_target_percent = 100

api_memory         = 1536
api_min_tasks      = 1
api_max_tasks      = 2
embedder_memory    = 2048
embedder_min_tasks = 1
embedder_max_tasks = 1

db_instance_class        = "db.t4g.micro"
db_allocated_storage_gb  = 20
db_multi_az              = false
db_deletion_protection   = false
db_backup_retention_days = 3

alb_deletion_protection = false
log_retention_days      = 7
trainer_memory          = 3072

api_settings = {
  DC_LOG_LEVEL = "DEBUG"
}
