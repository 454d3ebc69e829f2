-- V2: default data. Fixed ids so code and tests can name these rows; ON CONFLICT DO NOTHING so
-- a row an operator already created (or edited) is left alone.

-- Credit packages offered for purchase (one-time), in display order.
INSERT INTO credit_packages
  (id, name, description, credit_amount, bonus_credits, price_usd, price_currency,
   discount_percentage, is_available, package_type, display_order, highlight_color, badge_text)
VALUES
  ('pkg_starter', 'Starter', 'Try it out: 100 credits, about ten character generations.',
   100, 0, 4.99, 'USD', 0, true, 'one_time', 1, NULL, NULL),
  ('pkg_creator', 'Creator', '500 credits plus 50 bonus credits for regular creators.',
   500, 50, 19.99, 'USD', 0, true, 'one_time', 2, '#6366F1', 'POPULAR'),
  ('pkg_studio', 'Studio', '1200 credits plus 200 bonus credits for heavy use.',
   1200, 200, 39.99, 'USD', 0, true, 'one_time', 3, '#F59E0B', 'BEST VALUE'),
  ('pkg_pro', 'Pro Pack', '3000 credits plus 600 bonus credits for teams and professionals.',
   3000, 600, 89.99, 'USD', 0, true, 'one_time', 4, NULL, NULL)
ON CONFLICT DO NOTHING;

-- Price of POST /api/v1/characters/:id/generate.
--
-- cost_formula meaning:
--   cost = base_cost
--        + job_type[<job type>]
--        + for each of steps, pixels (= width * height) and batch_size:
--            cost * ceil(max(0, value - over) / every)
--   then multiplied by tier_multipliers[<subscription tier>] and rounded up (ceil).
-- E.g. a FREE user's character_generation at 20 steps, 512x512, batch 1 costs 10 credits;
-- a style_transfer at 50 steps, 1024x1024, batch 2 costs 10 + 2 + 2 + 12 + 10 = 36
-- (29 for PREMIUM: ceil(36 * 0.8) = ceil(28.8)).
INSERT INTO api_credit_configs
  (id, endpoint_pattern, http_method, base_cost, cost_formula,
   daily_limit, rate_limit_per_minute, requires_subscription, minimum_tier,
   is_enabled, description, category)
VALUES
  ('cfg_generate', '/api/v1/characters/:id/generate', 'POST', 10,
   '{"job_type": {"character_generation": 0, "style_transfer": 2, "upscale": 1, "variation": 0, "background_removal": 1}, "steps": {"over": 30, "every": 10, "cost": 1}, "pixels": {"over": 262144, "every": 262144, "cost": 4}, "batch_size": {"over": 1, "every": 1, "cost": 10}}',
   200, 10, false, NULL,
   true, 'Generate images for a character (character_generation, style_transfer, upscale, variation, background_removal).',
   'generation')
ON CONFLICT DO NOTHING;
