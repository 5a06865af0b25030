# dev: small, cheap, disposable. Sizes are per-environment decisions; the code is shared.
region      = "us-west-2"
environment = "dev"
owner       = "ml-platform"
cost_center = "ml-research"

vpc_cidr           = "10.20.0.0/16"
azs                = ["us-west-2a", "us-west-2b"]
single_nat_gateway = true

kubernetes_version         = "1.32"
eks_endpoint_public_access = false
eks_public_access_cidrs    = []
eks_admin_role_arns        = []

cpu_instance_types = ["m6i.2xlarge"]
cpu_min_size       = 2
cpu_max_size       = 6
gpu_instance_types = ["g6.xlarge"]
gpus_per_node      = 1
gpu_capacity_type  = "SPOT"
gpu_min_size       = 0
gpu_max_size       = 2

checkpoint_retention_days = 45
force_destroy_buckets     = true

db_instance_class        = "db.t4g.medium"
db_multi_az              = false
db_deletion_protection   = false
db_backup_retention_days = 3
