"""`hpcobs-job report JOBID`: one job's story from Prometheus (docs/job-report.md).

model     the report's values (frozen dataclasses)
queries   the PromQL, as pure functions of the job and its window (three requests)
gather    runs the queries, parses the answers into the model
findings  figures → plain-language efficiency findings (pure)
units     number formats shared by the renderers and the findings
render    text, JSON, HTML
cli       the command line
"""
