"""What the tests (tests/) and the benchmarks (bench/) both need to run the service on this machine:
`harness.services` starts and stops the API and Celery workers against PostgreSQL and Redis (or the
embedded SQLite stack) with an environment of their own; `harness.teachers` trains the small digits
teachers they submit jobs with. Not part of the product: nothing in api/, worker/, jobs/, kdcore/ or
kdclient/ imports it, and it is not installed (the tests and the benchmarks run from the checkout)."""
