"""What every front end answers through: the answer service, jobs, inputs, answer records, the model options."""
