# prod: highly available NAT and database, deletion protection, on-demand GPUs.
region      = "us-west-2"
environment = "prod"
owner       = "ml-platform"
cost_center = "ml-production"

vpc_cidr           = "10.30.0.0/16"
azs                = ["us-west-2a", "us-west-2b", "us-west-2c"]
single_nat_gateway = false

kubernetes_version         = "1.32"
eks_endpoint_public_access = false
eks_public_access_cidrs    = []
eks_admin_role_arns        = []

cpu_instance_types = ["m6i.4xlarge"]
cpu_min_size       = 3
cpu_max_size       = 20
gpu_instance_types = ["g6.12xlarge"]
gpus_per_node      = 4
gpu_capacity_type  = "ON_DEMAND"
gpu_min_size       = 0
gpu_max_size       = 4

checkpoint_retention_days = 120
force_destroy_buckets     = false

db_instance_class        = "db.m6g.large"
db_multi_az              = true
db_deletion_protection   = true
db_backup_retention_days = 30
