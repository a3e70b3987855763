"""AWS CDK infrastructure of the Salesforce token keeper: one construct per capability."""
